"""pgolf.export"""
