"""pgolf.data"""
