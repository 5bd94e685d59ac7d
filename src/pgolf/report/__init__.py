"""pgolf.report"""
